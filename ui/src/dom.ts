import { message } from "./api";

// A tiny DOM builder: text always goes in as text (never HTML), so names and messages from the
// server cannot inject markup.

type Attr = string | number | boolean | null | undefined | ((event: Event) => void);
export type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else if (value !== false && value !== null && value !== undefined) {
      el.setAttribute(key, String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

export function replace(parent: Node, ...children: Child[]): void {
  while (parent.firstChild) parent.removeChild(parent.firstChild);
  append(parent, ...children);
}

/** Redraws `container` and gives the focus back to the element with the same `data-key`, so a
 * periodic refresh never throws a keyboard user out of a list. */
export function redraw(container: HTMLElement, draw: () => void): void {
  const active = document.activeElement;
  const key = active instanceof HTMLElement && container.contains(active) ? active.dataset.key : undefined;
  draw();
  if (key) container.querySelector<HTMLElement>(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

/** Sets text only when it changed, so screen readers and selections are not disturbed. */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

/** Runs a form's action with its button disabled; a failure's message goes to `error`. */
export function onSubmit(
  form: HTMLFormElement,
  button: HTMLButtonElement,
  error: HTMLElement,
  action: () => Promise<void>,
): void {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      await action();
    } catch (e) {
      error.textContent = message(e);
    } finally {
      button.disabled = false;
    }
  });
}

/** A modal yes/no question on a native <dialog> (focus trapped, Escape cancels). */
export function confirmDialog(opts: {
  title: string;
  body: string;
  confirm: string;
  danger?: boolean;
}): Promise<boolean> {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", class: "button" }, "Cancel");
    const ok = h(
      "button",
      { type: "button", class: opts.danger ? "button danger" : "button primary" },
      opts.confirm,
    );
    const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": titleId },
      h("h2", { id: titleId }, opts.title),
      h("p", {}, opts.body),
      h("div", { class: "dialog-actions" }, cancel, ok),
    );
    let answer = false;
    cancel.addEventListener("click", () => dialog.close());
    ok.addEventListener("click", () => {
      answer = true;
      dialog.close();
    });
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Runs `tick` now and then every `ms` after each run finished, until the returned stop(). */
export function poll(tick: () => Promise<void>, ms: number): () => void {
  let stopped = false;
  let timer: number | undefined;
  const run = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await tick();
      } catch {
        // tick shows its own errors; keep polling
      }
    }
    if (!stopped) timer = window.setTimeout(run, ms);
  };
  void run();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

export function age(iso: string | null, now = Date.now()): string {
  if (!iso) return "—";
  return duration((now - Date.parse(iso)) / 1000);
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}
