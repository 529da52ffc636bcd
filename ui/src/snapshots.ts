// Snapshots: list (refreshed while one builds), create from an image, boot a sandbox, delete.
import { api, CONTROL, message, type Sandbox, type Snapshot } from "./api";
import { age, bytes, confirmDialog, h, onSubmit, poll, redraw, replace } from "./dom";
import { navigate } from "./nav";
import { statusBadge } from "./sandboxes";

const POLL_MS = 2000;
const GIB = 1024 ** 3;

export function snapshotsPage(main: HTMLElement): () => void {
  const status = h("p", { class: "live", role: "status", "aria-live": "polite" });
  const listError = h("p", { class: "error", role: "alert" });
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No snapshots yet. Create one above, or capture a sandbox from its page.");
  const table = h(
    "table",
    { class: "table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Name", "Tags", "Status", "Image", "Size", "Age", ""].map((t) =>
          h("th", { scope: "col" }, t || h("span", { class: "visually-hidden" }, "Actions")),
        ),
      ),
    ),
    tbody,
  );

  // -- create from an image ----------------------------------------------------------------
  const field = (id: string, label: string, input: HTMLElement) =>
    h("div", { class: "field" }, h("label", { for: id }, label), input);
  const name = h("input", {
    id: "snap-name",
    required: true,
    autocomplete: "off",
    pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?",
    title: "1-63 lowercase letters, digits and hyphens",
  });
  const image = h("input", { id: "snap-image", required: true, list: "snap-images", autocomplete: "off" });
  const images = h("datalist", { id: "snap-images" });
  const tag = h("input", { id: "snap-tag", autocomplete: "off", placeholder: "latest" });
  const capacity = h("input", {
    id: "snap-capacity",
    type: "number",
    min: "1",
    step: "1",
    placeholder: "server default",
    autocomplete: "off",
  });
  const createError = h("p", { class: "error", role: "alert" });
  const createButton = h("button", { type: "submit", class: "button primary" }, "Create snapshot");
  const form = h(
    "form",
    { class: "card create", "aria-labelledby": "snap-create-heading" },
    h("h2", { id: "snap-create-heading" }, "New snapshot from an image"),
    h(
      "div",
      { class: "fields" },
      field("snap-name", "Name", name),
      field("snap-image", "Image", image),
      field("snap-tag", "Tag (optional)", tag),
      field("snap-capacity", "Capacity in GiB (optional)", capacity),
      h("div", { class: "field field-button" }, createButton),
    ),
    images,
    createError,
  );
  onSubmit(form, createButton, createError, async () => {
    const body: Record<string, unknown> = { name: name.value.trim(), docker_image: image.value.trim() };
    if (tag.value.trim()) body.tag = tag.value.trim();
    if (capacity.value.trim()) body.fs_capacity_bytes = Math.round(Number(capacity.value) * GIB);
    const s = await api<Snapshot>("POST", `${CONTROL}/snapshots`, body);
    name.value = "";
    tag.value = "";
    status.textContent = `Snapshot ${s.name} created (${s.status}).`;
    await refresh();
  });

  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Snapshots")), form, status, listError, table, empty);

  async function remove(s: Snapshot): Promise<void> {
    listError.textContent = "";
    const yes = await confirmDialog({
      title: `Delete snapshot ${s.name}?`,
      body: "It and its tags are gone for good. Sandboxes already booted from it keep running.",
      confirm: "Delete",
      danger: true,
    });
    if (!yes) return;
    try {
      await api("DELETE", `${CONTROL}/snapshots/${encodeURIComponent(s.id)}`);
      status.textContent = `Snapshot ${s.name} deleted.`;
    } catch (e) {
      listError.textContent = message(e);
    }
    await refresh();
  }

  async function boot(s: Snapshot, button: HTMLButtonElement): Promise<void> {
    listError.textContent = "";
    button.disabled = true;
    status.textContent = `Booting a sandbox from ${s.name}…`;
    try {
      const sb = await api<Sandbox>("POST", `${CONTROL}/boxes`, { snapshot_id: s.id });
      navigate(`/sandboxes/${encodeURIComponent(sb.name)}`);
    } catch (e) {
      status.textContent = "";
      listError.textContent = message(e);
      button.disabled = false;
    }
  }

  function row(s: Snapshot): HTMLElement {
    const del = h(
      "button",
      { type: "button", class: "button small danger", "aria-label": `Delete snapshot ${s.name}`, "data-key": `del:${s.id}` },
      "Delete",
    );
    del.addEventListener("click", () => void remove(s));
    const bootButton = h(
      "button",
      { type: "button", class: "button small", "aria-label": `Boot a sandbox from ${s.name}`, "data-key": `boot:${s.id}` },
      "Boot",
    );
    bootButton.disabled = s.status !== "ready";
    bootButton.addEventListener("click", () => void boot(s, bootButton));
    return h(
      "tr",
      { "data-name": s.name, "data-id": s.id },
      h("td", { "data-label": "Name" }, h("span", { class: "name" }, s.name)),
      h("td", { "data-label": "Tags" }, s.tags.length ? s.tags.join(", ") : "—"),
      h(
        "td",
        { "data-label": "Status" },
        statusBadge(s.status),
        s.status_message ? h("span", { class: "status-message" }, ` ${s.status_message}`) : null,
      ),
      h("td", { "data-label": "Image" }, s.docker_image ? h("code", {}, s.docker_image) : s.source_sandbox_id ? "captured" : "—"),
      h("td", { "data-label": "Size" }, s.fs_used_bytes !== null ? bytes(s.fs_used_bytes) : "—"),
      h("td", { "data-label": "Age" }, age(s.created_at)),
      h("td", { class: "actions" }, bootButton, " ", del),
    );
  }

  async function refresh(): Promise<void> {
    try {
      const { snapshots } = await api<{ snapshots: Snapshot[] }>("GET", `${CONTROL}/snapshots?limit=500`);
      redraw(tbody, () => replace(tbody, ...snapshots.map(row)));
      table.hidden = snapshots.length === 0;
      empty.hidden = snapshots.length !== 0;
      if (listError.textContent?.startsWith("Could not load")) listError.textContent = "";
    } catch (e) {
      listError.textContent = `Could not load snapshots: ${message(e)}`;
      throw e;
    }
  }

  api<{ images: string[] }>("GET", "/ui/api/images")
    .then(({ images: names }) => {
      replace(images, ...names.map((n) => h("option", { value: n })));
      if (!image.value && names.length) image.placeholder = names[0];
    })
    .catch(() => {});
  return poll(refresh, POLL_MS);
}
