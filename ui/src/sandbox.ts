// One sandbox: details, its command sessions, and terminals (several, one shown at a time).
import { api, ApiError, CONTROL, message, type Command, type Sandbox, type ServiceUrl, type Snapshot } from "./api";
import { age, bytes, confirmDialog, h, onSubmit, poll, redraw, replace, setText } from "./dom";
import { navigate } from "./nav";
import { deleteSandbox, resourcesText, statusBadge, ttlText } from "./sandboxes";
import { isTerminalId, newTerminalId, TerminalView, type TermState } from "./terminal";

const POLL_MS = 3000;

export function sandboxPage(main: HTMLElement, [name]: string[]): () => void {
  const path = `/ui/api/sandboxes/${encodeURIComponent(name)}`;
  let sandbox: Sandbox | null = null;
  let commands: Command[] = [];
  let gone = false;
  let view: TerminalView | null = null;
  let active: string | null = new URLSearchParams(location.search).get("t");
  const known = new Set<string>(active ? [active] : []);

  // -- layout ------------------------------------------------------------------------------
  const badge = h("span", { class: "head-status" });
  const banner = h("div", { class: "banner", role: "alert", hidden: true });
  const details = h("dl", { class: "details" });
  const summary = h("p", { class: "summary" });
  let refreshFailed = false;
  const deleteButton = h("button", { type: "button", class: "button danger" }, "Delete sandbox");
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Terminals" });
  const newButton = h("button", { type: "button", class: "button primary", id: "new-terminal" }, "New terminal");
  const termState = h("p", { class: "term-state", role: "status", "aria-live": "polite" });
  const retryButton = h("button", { type: "button", class: "button small", hidden: true }, "Retry");
  const killButton = h("button", { type: "button", class: "button small danger", hidden: true }, "End this terminal");
  const termHost = h("div", {
    class: "term-host",
    id: "term-panel",
    role: "tabpanel",
    "aria-label": "Terminal",
  });
  const termHelp = h(
    "p",
    { class: "help", id: "term-help", hidden: true },
    "Typing goes to the shell, Tab included; Shift+Tab moves the focus out of the terminal.",
  );
  termHost.setAttribute("aria-describedby", "term-help");
  const termPlaceholder = h("p", { class: "empty" }, "Open a terminal to get a shell in this sandbox.");
  const commandsBody = h("tbody");
  const commandsTable = h(
    "table",
    { class: "table commands" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Command id", "Kind", "State", "PID", "Started", "Clients", "Output", ""].map((t) =>
          h("th", { scope: "col" }, t || h("span", { class: "visually-hidden" }, "Actions")),
        ),
      ),
    ),
    commandsBody,
  );
  const commandsEmpty = h("p", { class: "empty" }, "No commands have run yet.");

  // Capture this sandbox's files as a snapshot; open one of its ports in a new tab.
  const field = (id: string, label: string, input: HTMLElement) =>
    h("div", { class: "field" }, h("label", { for: id }, label), input);
  const captureName = h("input", {
    id: "capture-name",
    required: true,
    autocomplete: "off",
    pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?",
    title: "1-63 lowercase letters, digits and hyphens",
  });
  const captureTag = h("input", { id: "capture-tag", autocomplete: "off", placeholder: "latest" });
  const captureButton = h("button", { type: "submit", class: "button" }, "Capture");
  const captureError = h("p", { class: "error", role: "alert" });
  const captureDone = h("p", { class: "live", role: "status", "aria-live": "polite" });
  const captureForm = h(
    "form",
    { class: "card create", "aria-labelledby": "capture-heading" },
    h("h2", { id: "capture-heading" }, "Capture as a snapshot"),
    h(
      "div",
      { class: "fields" },
      field("capture-name", "Snapshot name", captureName),
      field("capture-tag", "Snapshot tag (optional)", captureTag),
      h("div", { class: "field field-button" }, captureButton),
    ),
    captureError,
    captureDone,
  );
  onSubmit(captureForm, captureButton, captureError, async () => {
    captureDone.textContent = "";
    const body: Record<string, unknown> = { name: captureName.value.trim() };
    if (captureTag.value.trim()) body.tag = captureTag.value.trim();
    const snap = await api<Snapshot>("POST", `${CONTROL}/boxes/${encodeURIComponent(name)}/snapshot`, body);
    captureName.value = "";
    captureTag.value = "";
    replace(captureDone, `Snapshot ${snap.name} captured (${snap.status}). `, h("a", { href: "/snapshots" }, "See the snapshots"));
  });

  const portInput = h("input", {
    id: "service-port",
    type: "number",
    min: "1",
    max: "65535",
    step: "1",
    required: true,
    autocomplete: "off",
  });
  const portButton = h("button", { type: "submit", class: "button" }, "Open port");
  const portError = h("p", { class: "error", role: "alert" });
  const portDone = h("p", { class: "live", role: "status", "aria-live": "polite" });
  const portForm = h(
    "form",
    { class: "card create", "aria-labelledby": "port-heading" },
    h("h2", { id: "port-heading" }, "Open a port"),
    h(
      "p",
      { class: "help" },
      "A service listening on this port in the sandbox opens in a new tab, on the server's service origin.",
    ),
    h("div", { class: "fields" }, field("service-port", "Port", portInput), h("div", { class: "field field-button" }, portButton)),
    portError,
    portDone,
  );
  onSubmit(portForm, portButton, portError, async () => {
    portDone.textContent = "";
    const port = Number(portInput.value);
    const svc = await api<ServiceUrl>("POST", `${CONTROL}/boxes/${encodeURIComponent(name)}/service-url`, { port });
    // noopener: the service's page (sandbox code) gets no handle on this one.
    window.open(svc.browser_url, "_blank", "noopener,noreferrer");
    // A fallback when a popup blocker ate the tab (the open comes after an await).
    replace(
      portDone,
      `Port ${port} opened in a new tab. `,
      h("a", { href: svc.browser_url, target: "_blank", rel: "noopener noreferrer" }, `Open port ${port} again`),
    );
  });

  replace(
    main,
    h(
      "nav",
      { class: "crumbs", "aria-label": "Breadcrumb" },
      h("a", { href: "/" }, "Sandboxes"),
      h("span", { "aria-hidden": "true" }, " / "),
      h("span", { "aria-current": "page" }, name),
    ),
    h("div", { class: "page-head" }, h("h1", {}, name), badge, h("div", { class: "grow" }), deleteButton),
    summary,
    banner,
    h(
      "section",
      { class: "card terminals", "aria-labelledby": "terminals-heading" },
      h(
        "div",
        { class: "section-head" },
        h("h2", { id: "terminals-heading" }, "Terminals"),
        tabs,
        newButton,
      ),
      h("div", { class: "term-bar" }, termState, retryButton, killButton),
      termPlaceholder,
      termHost,
      termHelp,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "commands-heading" },
      h("h2", { id: "commands-heading" }, "Commands"),
      commandsTable,
      commandsEmpty,
    ),
    h("section", { class: "card", "aria-labelledby": "details-heading" }, h("h2", { id: "details-heading" }, "Details"), details),
    portForm,
    captureForm,
  );
  termHost.hidden = true;

  // -- terminals ---------------------------------------------------------------------------
  function setUrl(): void {
    const url = active ? `${location.pathname}?t=${encodeURIComponent(active)}` : location.pathname;
    if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  }

  function showState(state: TermState, text: string): void {
    setText(termState, text);
    termState.dataset.state = state;
    retryButton.hidden = state !== "failed" || gone;
    killButton.hidden = state !== "connected";
  }

  async function diagnose(): Promise<string | null> {
    try {
      const sb = await api<Sandbox>("GET", path);
      return sb.status === "ready" ? null : `Sandbox ${name} is ${sb.status}${sb.status_message ? `: ${sb.status_message}` : ""}.`;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        markGone();
        return `Sandbox ${name} no longer exists.`;
      }
      if (e instanceof ApiError && e.status === 401) return "Signed out.";
      return null;
    }
  }

  function open(id: string, create: boolean, pty = true): void {
    if (!sandbox || gone) return;
    view?.dispose();
    active = id;
    known.add(id);
    setUrl();
    drawTabs();
    termPlaceholder.hidden = true;
    termHost.hidden = false;
    termHelp.hidden = false;
    view = new TerminalView(termHost, {
      sandboxId: sandbox.id,
      commandId: id,
      create,
      pty,
      onState: showState,
      diagnose,
    });
    termHost.scrollIntoView({ block: "nearest" });
    view.focus();
  }

  function drawTabs(): void {
    const ids = [...known];
    redraw(tabs, () => replace(
      tabs,
      ...ids.map((id) => {
        const cmd = commands.find((c) => c.command_id === id);
        const label = isTerminalId(id) ? id.slice(5) : id.slice(0, 12);
        const tab = h(
          "button",
          {
            type: "button",
            role: "tab",
            class: "tab",
            id: `tab-${id}`,
            "aria-selected": id === active ? "true" : "false",
            "aria-controls": "term-panel",
            "data-key": `tab:${id}`,
            tabindex: id === active || (!active && id === ids[0]) ? "0" : "-1",
            title: id,
          },
          label,
          cmd && cmd.state !== "running" ? h("span", { class: "tab-note" }, " (exited)") : null,
        );
        tab.addEventListener("click", () => {
          if (id !== active) open(id, false, cmd?.pty ?? true);
        });
        tab.addEventListener("keydown", (event) => {
          const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
          if (!step) return;
          event.preventDefault();
          const next = tabs.children[(ids.indexOf(id) + step + ids.length) % ids.length] as HTMLElement;
          next.focus();
          next.click();
        });
        return tab;
      }),
    ));
    termHost.setAttribute("aria-labelledby", active ? `tab-${active}` : "terminals-heading");
  }

  newButton.addEventListener("click", () => open(newTerminalId(), true));
  retryButton.addEventListener("click", () => view?.retry());
  killButton.addEventListener("click", async () => {
    const yes = await confirmDialog({
      title: "End this terminal?",
      body: "Its shell and everything started from it are killed.",
      confirm: "End terminal",
      danger: true,
    });
    if (yes) view?.kill();
    view?.focus();
  });
  deleteButton.addEventListener("click", async () => {
    try {
      if (await deleteSandbox(name)) {
        view?.dispose();
        view = null;
        navigate("/", true);
      }
    } catch (e) {
      showBanner(message(e));
    }
  });

  // -- details and commands ----------------------------------------------------------------
  function showBanner(text: string, ...extra: (Node | string)[]): void {
    replace(banner, text, ...extra);
    banner.hidden = false;
  }

  function markGone(): void {
    if (gone) return;
    gone = true;
    view?.dispose();
    view = null;
    termHost.hidden = true;
    termHelp.hidden = true;
    newButton.disabled = true;
    deleteButton.disabled = true;
    captureButton.disabled = true;
    portButton.disabled = true;
    showBanner(`Sandbox ${name} no longer exists; it was deleted or expired. `, h("a", { href: "/" }, "Back to the sandboxes"));
    showState("failed", "The sandbox is gone.");
  }

  function drawDetails(sb: Sandbox): void {
    replace(badge, statusBadge(sb.status));
    setText(summary, [sb.template_name, sb.image, resourcesText(sb), `${age(sb.created_at)} old`, `TTL ${ttlText(sb)}`].filter(Boolean).join(" · "));
    const rows: [string, string | Node][] = [
      ["Status", sb.status + (sb.status_message ? ` — ${sb.status_message}` : "")],
      ["Template", sb.template_name ?? "—"],
      ["Snapshot", sb.snapshot_id ? h("code", { class: "snapshot-id" }, sb.snapshot_id) : "—"],
      ["Image", h("code", {}, sb.image)],
      ["Resources", resourcesText(sb)],
      ["Age", age(sb.created_at)],
      ["TTL", ttlText(sb)],
      ["Id", h("code", {}, sb.id)],
      ["Data plane", h("code", {}, sb.dataplane_url)],
    ];
    replace(details, ...rows.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
    newButton.disabled = sb.status !== "ready";
    if (sb.status !== "ready" && !view) {
      setText(termPlaceholder, `The sandbox is ${sb.status}; terminals open once it is ready.`);
    } else if (!view) {
      setText(termPlaceholder, "Open a terminal to get a shell in this sandbox.");
    }
  }

  function drawCommands(): void {
    redraw(commandsBody, () => replace(
      commandsBody,
      ...commands.map((c) => {
        const openButton = h(
          "button",
          {
            type: "button",
            class: "button small",
            "aria-label": `Open ${c.command_id} in a terminal`,
            "data-key": `open:${c.command_id}`,
          },
          c.command_id === active ? "Shown" : "Open",
        );
        openButton.disabled = c.command_id === active || gone;
        openButton.addEventListener("click", () => open(c.command_id, false, c.pty));
        return h(
          "tr",
          { "data-command-id": c.command_id },
          h("td", { "data-label": "Command id" }, h("code", {}, c.command_id)),
          h("td", { "data-label": "Kind" }, c.pty ? "terminal" : "pipes"),
          h("td", { "data-label": "State" }, c.state + (c.exit_code !== null ? ` (${c.exit_code})` : "")),
          h("td", { "data-label": "PID" }, c.pid ? String(c.pid) : "—"),
          h("td", { "data-label": "Started" }, `${age(c.created_at)} ago`),
          h("td", { "data-label": "Clients" }, String(c.attached)),
          h("td", { "data-label": "Output" }, bytes(c.output_bytes)),
          h("td", { class: "actions" }, openButton),
        );
      }),
    ));
    commandsTable.hidden = commands.length === 0;
    commandsEmpty.hidden = commands.length !== 0;
  }

  async function refresh(): Promise<void> {
    if (gone) return;
    try {
      const [sb, cmds] = await Promise.all([
        api<Sandbox>("GET", path),
        api<{ commands: Command[] }>("GET", `${path}/commands`),
      ]);
      const first = sandbox === null;
      if (refreshFailed) {
        banner.hidden = true;
        refreshFailed = false;
      }
      sandbox = sb;
      commands = cmds.commands;
      for (const c of commands) if (c.pty && isTerminalId(c.command_id) && c.state === "running") known.add(c.command_id);
      drawDetails(sb);
      drawCommands();
      drawTabs();
      if (first && active && sb.status === "ready") {
        const cmd = commands.find((c) => c.command_id === active);
        open(active, false, cmd?.pty ?? true);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) markGone();
      else if (!(e instanceof ApiError && e.status === 401)) {
        showBanner(`Could not refresh: ${message(e)}`);
        refreshFailed = true;
      }
      throw e;
    }
  }

  const stopPolling = poll(refresh, POLL_MS);
  return () => {
    stopPolling();
    view?.dispose();
    view = null;
  };
}
