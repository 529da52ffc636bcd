// The hutch web UI: a page router over one HTML file, the shell around the pages, sign-in.
import "@xterm/xterm/css/xterm.css";
import "./style.css";

import { api, whenSignedOut } from "./api";
import { h, onSubmit, replace } from "./dom";
import { navigate, onNavigate } from "./nav";
import { sandboxPage } from "./sandbox";
import { sandboxesPage } from "./sandboxes";
import { snapshotsPage } from "./snapshots";
import { templatesPage } from "./templates";

/** A page draws into `main` and returns what stops its timers and sockets. */
export type Page = (main: HTMLElement, params: string[]) => () => void;

const ROUTES: [RegExp, Page][] = [
  [/^\/$/, sandboxesPage],
  [/^\/templates$/, templatesPage],
  [/^\/snapshots$/, snapshotsPage],
  [/^\/sandboxes\/([^/]+)$/, sandboxPage],
];

const app = document.getElementById("app") as HTMLElement;
let stopPage: (() => void) | null = null;
let firstRender = true;

/** Where to go after signing in: a path of this site only. */
function safeNext(raw: string | null): string {
  return raw && raw.startsWith("/") && !raw.startsWith("//") && !raw.startsWith("/\\") ? raw : "/";
}

function render(): void {
  stopPage?.();
  stopPage = null;
  const path = location.pathname;
  if (path === "/sign-in") {
    signInPage();
    return;
  }
  const main = h("main", { id: "main", tabindex: "-1" });
  replace(app, header(path), main);
  const route = ROUTES.find(([re]) => re.test(path));
  if (!route) {
    replace(
      main,
      h("h1", {}, "Page not found"),
      h("p", {}, "There is no page at ", h("code", {}, path), ". ", h("a", { href: "/" }, "Back to the sandboxes")),
    );
    return;
  }
  const params = (path.match(route[0]) ?? []).slice(1).map(decodeURIComponent);
  stopPage = route[1](main, params);
  if (!firstRender) main.querySelector("h1")?.setAttribute("tabindex", "-1");
  if (!firstRender) (main.querySelector("h1") as HTMLElement | null)?.focus();
  firstRender = false;
}

function header(path: string): HTMLElement {
  const link = (href: string, label: string, current: boolean) =>
    h("a", { href, "aria-current": current ? "page" : null }, label);
  const who = h("span", { class: "who" });
  api<{ workspace: string }>("GET", "/ui/api/session")
    .then((me) => {
      who.textContent = `workspace ${me.workspace}`;
    })
    .catch(() => {});
  const signOut = h("button", { type: "button", class: "button quiet" }, "Sign out");
  signOut.addEventListener("click", async () => {
    try {
      await api("DELETE", "/ui/api/session");
    } finally {
      navigate("/sign-in", true);
    }
  });
  return h(
    "header",
    { class: "topbar" },
    h("a", { href: "/", class: "brand" }, "hutch"),
    h(
      "nav",
      { "aria-label": "Main" },
      link("/", "Sandboxes", path === "/" || path.startsWith("/sandboxes/")),
      link("/templates", "Templates", path === "/templates"),
      link("/snapshots", "Snapshots", path === "/snapshots"),
    ),
    h("div", { class: "topbar-end" }, who, signOut),
  );
}

function signInPage(): void {
  const query = new URLSearchParams(location.search);
  const next = safeNext(query.get("next"));
  const input = h("input", {
    id: "api-key",
    name: "api_key",
    type: "password",
    required: true,
    autocomplete: "current-password",
    spellcheck: "false",
    "aria-describedby": "api-key-help",
  });
  const error = h("p", { class: "error", role: "alert", id: "sign-in-error" });
  const submit = h("button", { type: "submit", class: "button primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin" },
    h("h1", {}, "Sign in to hutch"),
    query.get("expired")
      ? h("p", { class: "notice", role: "status" }, "Your session has expired or was signed out. Sign in again.")
      : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { id: "api-key-help", class: "help" },
      "The server's key is in HUTCH_API_KEY or <data dir>/api-key. It is traded for a session cookie; the browser does not keep it.",
    ),
    error,
    submit,
  );
  onSubmit(form, submit, error, async () => {
    try {
      await api("POST", "/ui/api/session", { api_key: input.value });
    } catch (e) {
      input.select();
      throw e;
    }
    navigate(next, true);
  });
  replace(app, h("main", { id: "main", class: "signin-page" }, form));
  input.focus();
  // Arriving by a link from another site, the browser held the SameSite=Strict cookie back;
  // asked from this page, it sends it: still signed in means straight on.
  api("GET", "/ui/api/session")
    .then(() => navigate(next, true))
    .catch(() => {});
}

whenSignedOut(() => {
  if (location.pathname === "/sign-in") return;
  const next = encodeURIComponent(location.pathname + location.search);
  navigate(`/sign-in?expired=1&next=${next}`, true);
});

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = (event.target as Element).closest?.("a");
  if (!link || link.target || link.origin !== location.origin || link.hasAttribute("download")) return;
  if (link.pathname.startsWith("/ui/") || link.pathname.startsWith("/api/")) return;
  event.preventDefault();
  if (link.pathname + link.search !== location.pathname + location.search) {
    navigate(link.pathname + link.search);
  }
});
window.addEventListener("popstate", render);
onNavigate(render);
render();
