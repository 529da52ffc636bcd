// Templates: list, create (name, image, resources), delete (the server refuses one in use).
import { api, CONTROL, message, type Template } from "./api";
import { age, confirmDialog, h, onSubmit, replace } from "./dom";

export function templatesPage(main: HTMLElement): () => void {
  const status = h("p", { class: "live", role: "status", "aria-live": "polite" });
  const listError = h("p", { class: "error", role: "alert" });
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No templates yet. Create one above.");
  const table = h(
    "table",
    { class: "table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Name", "Image", "CPU", "Memory", "Age", ""].map((t) =>
          h("th", { scope: "col" }, t || h("span", { class: "visually-hidden" }, "Actions")),
        ),
      ),
    ),
    tbody,
  );

  const field = (id: string, label: string, input: HTMLElement) =>
    h("div", { class: "field" }, h("label", { for: id }, label), input);
  const name = h("input", {
    id: "tpl-name",
    required: true,
    autocomplete: "off",
    pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?",
    title: "1-63 lowercase letters, digits and hyphens",
  });
  const image = h("input", { id: "tpl-image", required: true, list: "tpl-images", autocomplete: "off" });
  const images = h("datalist", { id: "tpl-images" });
  const cpu = h("input", { id: "tpl-cpu", value: "500m", required: true, autocomplete: "off" });
  const memory = h("input", { id: "tpl-memory", value: "512Mi", required: true, autocomplete: "off" });
  const createError = h("p", { class: "error", role: "alert" });
  const createButton = h("button", { type: "submit", class: "button primary" }, "Create template");
  const form = h(
    "form",
    { class: "card create", "aria-labelledby": "tpl-create-heading" },
    h("h2", { id: "tpl-create-heading" }, "New template"),
    h(
      "div",
      { class: "fields" },
      field("tpl-name", "Name", name),
      field("tpl-image", "Image", image),
      field("tpl-cpu", "CPU", cpu),
      field("tpl-memory", "Memory", memory),
      h("div", { class: "field field-button" }, createButton),
    ),
    images,
    createError,
  );
  onSubmit(form, createButton, createError, async () => {
    const t = await api<Template>("POST", `${CONTROL}/templates`, {
      name: name.value.trim(),
      image: image.value.trim(),
      resources: { cpu: cpu.value.trim(), memory: memory.value.trim() },
    });
    name.value = "";
    status.textContent = `Template ${t.name} created.`;
    await refresh();
  });

  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Templates")), form, status, listError, table, empty);

  async function remove(t: Template): Promise<void> {
    listError.textContent = "";
    const yes = await confirmDialog({
      title: `Delete template ${t.name}?`,
      body: "Sandboxes can no longer be created from it. A template still used by sandboxes cannot be deleted.",
      confirm: "Delete",
      danger: true,
    });
    if (!yes) return;
    try {
      await api("DELETE", `${CONTROL}/templates/${encodeURIComponent(t.name)}`);
      status.textContent = `Template ${t.name} deleted.`;
    } catch (e) {
      listError.textContent = message(e);
    }
    await refresh();
  }

  async function refresh(): Promise<void> {
    try {
      const { templates } = await api<{ templates: Template[] }>("GET", `${CONTROL}/templates`);
      replace(
        tbody,
        ...templates.map((t) => {
          const del = h("button", { type: "button", class: "button small danger", "aria-label": `Delete template ${t.name}` }, "Delete");
          del.addEventListener("click", () => void remove(t));
          return h(
            "tr",
            { "data-name": t.name },
            h("td", { "data-label": "Name" }, h("span", { class: "name" }, t.name)),
            h("td", { "data-label": "Image" }, h("code", {}, t.image)),
            h("td", { "data-label": "CPU" }, t.resources.cpu ?? "—"),
            h("td", { "data-label": "Memory" }, t.resources.memory ?? "—"),
            h("td", { "data-label": "Age" }, age(t.created_at)),
            h("td", { class: "actions" }, del),
          );
        }),
      );
      table.hidden = templates.length === 0;
      empty.hidden = templates.length !== 0;
    } catch (e) {
      listError.textContent = `Could not load templates: ${message(e)}`;
    }
  }

  api<{ images: string[] }>("GET", "/ui/api/images")
    .then(({ images: names }) => {
      replace(images, ...names.map((n) => h("option", { value: n })));
      if (!image.value && names.length) image.placeholder = names[0];
    })
    .catch(() => {});
  void refresh();
  return () => {};
}
