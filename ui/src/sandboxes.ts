// The sandbox list: live status, filter by name, create from a template, delete.
import { api, ApiError, CONTROL, message, type Sandbox, type Template } from "./api";
import { age, confirmDialog, duration, h, onSubmit, poll, replace, setText } from "./dom";

const POLL_MS = 2000;

export function statusBadge(status: string): HTMLElement {
  return h("span", { class: `status status-${status}` }, status);
}

export function resourcesText(sb: Sandbox): string {
  const r = sb.resources;
  if (!r) return "—";
  return [r.cpu ? `${r.cpu} CPU` : null, r.memory].filter(Boolean).join(" · ") || "—";
}

export function ttlText(sb: Sandbox, now = Date.now()): string {
  const parts: string[] = [];
  if (sb.ttl_seconds) parts.push(`ttl ${duration(sb.ttl_seconds)}`);
  if (sb.idle_ttl_seconds) parts.push(`idle ${duration(sb.idle_ttl_seconds)}`);
  if (!parts.length) return "none";
  if (sb.expires_at) parts.push(`(ends in ${duration((Date.parse(sb.expires_at) - now) / 1000)})`);
  return parts.join(" ");
}

/** Asks, then deletes; `confirmed` runs between the two. False if the person said no. */
export async function deleteSandbox(name: string, confirmed?: () => void): Promise<boolean> {
  const yes = await confirmDialog({
    title: `Delete sandbox ${name}?`,
    body: "Its processes are killed and its files are gone for good.",
    confirm: "Delete",
    danger: true,
  });
  if (!yes) return false;
  confirmed?.();
  await api("DELETE", `${CONTROL}/boxes/${encodeURIComponent(name)}`);
  return true;
}

const TTL_CHOICES: [string, number][] = [
  ["No TTL", 0],
  ["10 minutes", 600],
  ["1 hour", 3600],
  ["1 day", 86400],
];

export function sandboxesPage(main: HTMLElement): () => void {
  const filter = h("input", {
    id: "filter",
    type: "search",
    placeholder: "name contains…",
    autocomplete: "off",
  });
  const status = h("p", { class: "live", role: "status", "aria-live": "polite" });
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true });
  const table = h(
    "table",
    { class: "table", "aria-describedby": "sandboxes-caption" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Name", "Template", "Status", "Age", "Resources", "TTL", ""].map((t) =>
          h("th", { scope: "col" }, t || h("span", { class: "visually-hidden" }, "Actions")),
        ),
      ),
    ),
    tbody,
  );

  // -- create ------------------------------------------------------------------------------
  const templateSelect = h("select", { id: "new-template", required: true });
  const nameInput = h("input", {
    id: "new-name",
    placeholder: "generated when empty",
    autocomplete: "off",
    pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?",
    title: "1-63 lowercase letters, digits and hyphens",
  });
  const ttlSelect = h(
    "select",
    { id: "new-ttl" },
    ...TTL_CHOICES.map(([label, seconds]) => h("option", { value: seconds }, label)),
  );
  const createError = h("p", { class: "error", role: "alert" });
  const createButton = h("button", { type: "submit", class: "button primary" }, "Create sandbox");
  const form = h(
    "form",
    { class: "card create", "aria-labelledby": "create-heading" },
    h("h2", { id: "create-heading" }, "New sandbox"),
    h(
      "div",
      { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "new-template" }, "Template"), templateSelect),
      h("div", { class: "field" }, h("label", { for: "new-name" }, "Name (optional)"), nameInput),
      h("div", { class: "field" }, h("label", { for: "new-ttl" }, "TTL"), ttlSelect),
      h("div", { class: "field field-button" }, createButton),
    ),
    createError,
  );
  onSubmit(form, createButton, createError, async () => {
    const ttl = Number(ttlSelect.value);
    const sb = await api<Sandbox>("POST", `${CONTROL}/boxes`, {
      template_name: templateSelect.value,
      name: nameInput.value.trim() || null,
      wait_for_ready: false,
      ...(ttl ? { ttl_seconds: ttl } : {}),
    });
    nameInput.value = "";
    creating = sb.name;
    status.textContent = `Sandbox ${sb.name} is being created…`;
    await refresh();
  });

  replace(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Sandboxes")),
    form,
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "filter" }, "Filter by name"),
      filter,
      status,
    ),
    h("p", { id: "sandboxes-caption", class: "visually-hidden" }, "Sandboxes of this workspace; updates every two seconds"),
    table,
    empty,
  );

  async function loadTemplates(): Promise<void> {
    try {
      const { templates } = await api<{ templates: Template[] }>("GET", `${CONTROL}/templates`);
      if (!templates.length) {
        replace(templateSelect, h("option", { value: "" }, "no templates yet"));
        createButton.disabled = true;
        replace(
          createError,
          "Create a template first on the ",
          h("a", { href: "/templates" }, "Templates page"),
          ".",
        );
        return;
      }
      replace(
        templateSelect,
        ...templates.map((t) => h("option", { value: t.name }, `${t.name} (${t.image})`)),
      );
    } catch (e) {
      createError.textContent = `Could not load templates: ${message(e)}`;
    }
  }

  // -- the list ----------------------------------------------------------------------------
  let sandboxes: Sandbox[] = [];
  let creating: string | null = null;
  const rows = new Map<string, HTMLTableRowElement>();
  const deleting = new Set<string>();

  function row(sb: Sandbox): HTMLTableRowElement {
    let tr = rows.get(sb.id);
    if (!tr) {
      const del = h("button", { type: "button", class: "button small danger" }, "Delete");
      del.setAttribute("aria-label", `Delete sandbox ${sb.name}`);
      del.addEventListener("click", async () => {
        const current = tr?.dataset.name ?? sb.name;
        const mark = () => {
          deleting.add(sb.id);
          draw();
        };
        try {
          if (await deleteSandbox(current, mark)) status.textContent = `Sandbox ${current} deleted.`;
        } catch (e) {
          if (!(e instanceof ApiError && e.status === 404)) status.textContent = message(e);
        } finally {
          deleting.delete(sb.id);
          await refresh();
        }
      });
      tr = h(
        "tr",
        { "data-name": sb.name },
        h("td", { "data-label": "Name" }, h("a", { href: `/sandboxes/${encodeURIComponent(sb.name)}`, class: "name" })),
        h("td", { "data-label": "Template" }),
        h("td", { "data-label": "Status" }),
        h("td", { "data-label": "Age" }),
        h("td", { "data-label": "Resources" }),
        h("td", { "data-label": "TTL" }),
        h("td", { class: "actions" }, del),
      );
      rows.set(sb.id, tr);
    }
    const [name, template, st, ageCell, res, ttl] = Array.from(tr.cells);
    const link = name.firstElementChild as HTMLAnchorElement;
    setText(link, sb.name);
    link.setAttribute("href", `/sandboxes/${encodeURIComponent(sb.name)}`);
    tr.dataset.name = sb.name;
    setText(template, sb.template_name ?? "—");
    const shown = deleting.has(sb.id) ? "deleting" : sb.status;
    if (st.firstElementChild?.textContent !== shown) replace(st, statusBadge(shown));
    st.title = sb.status_message ?? "";
    setText(ageCell, age(sb.created_at));
    setText(res, resourcesText(sb));
    setText(ttl, ttlText(sb));
    return tr;
  }

  function draw(): void {
    const made = sandboxes.find((sb) => sb.name === creating);
    if (made && made.status !== "provisioning") {
      status.textContent =
        made.status === "ready"
          ? `Sandbox ${made.name} is ready.`
          : `Sandbox ${made.name} is ${made.status}${made.status_message ? `: ${made.status_message}` : ""}.`;
      creating = null;
    }
    const needle = filter.value.trim().toLowerCase();
    const shown = sandboxes.filter((sb) => sb.name.toLowerCase().includes(needle));
    const keep = new Set(sandboxes.map((sb) => sb.id));
    for (const [id, tr] of rows) {
      if (!keep.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    for (const tr of tbody.rows) tr.hidden = true;
    shown.forEach((sb, i) => {
      const tr = row(sb);
      tr.hidden = false;
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] ?? null);
    });
    table.hidden = shown.length === 0;
    empty.hidden = shown.length !== 0;
    setText(
      empty,
      sandboxes.length === 0 ? "No sandboxes yet. Create one from a template above." : `No sandbox name contains "${needle}".`,
    );
  }

  async function refresh(): Promise<void> {
    try {
      sandboxes = (await api<{ sandboxes: Sandbox[] }>("GET", "/ui/api/sandboxes")).sandboxes;
      if (status.dataset.error) {
        status.textContent = "";
        delete status.dataset.error;
      }
      draw();
    } catch (e) {
      status.textContent = `Could not refresh the list: ${message(e)}`;
      status.dataset.error = "1";
      throw e;
    }
  }

  filter.addEventListener("input", draw);
  void loadTemplates();
  return poll(refresh, POLL_MS);
}
