// An xterm.js terminal attached to one command session over /dp/<id>/execute/ws (spec §4).
//
// A new terminal sends `execute` with a command id chosen here (get-or-create, so a retry never
// starts a second shell), a PTY, no deadline, kill_on_disconnect false and a long idle timeout:
// the shell outlives the page. Opening it again (a reload, another tab) sends `reconnect` from
// offset 0, which replays the scrollback the server kept. A dropped connection resumes from the
// byte offsets received so far. Resizes travel as {"type": "resize", "rows", "cols"}, a hutch
// extension of the protocol.
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";

export type TermState = "connecting" | "connected" | "reconnecting" | "exited" | "ended" | "failed";

export interface TermOptions {
  sandboxId: string;
  commandId: string;
  /** Start the command (execute) if it does not exist yet; otherwise re-attach (reconnect). */
  create: boolean;
  pty: boolean;
  onState(state: TermState, text: string): void;
  /** After an upgrade was refused: a reason to stop retrying (sandbox gone, signed out). */
  diagnose(): Promise<string | null>;
}

/** Run the image's own shell: `$0` is the shell the server chose (bash, else sh). */
const SHELL_COMMAND = 'exec "$0" -l';
const IDLE_TIMEOUT_SECONDS = 8 * 3600;
const TTL_SECONDS = 600;
const MAX_ATTEMPTS = 5;
/** Replayed output arrives in one burst; this long without a message ends the burst. */
const REPLAY_QUIET_MS = 150;
/** What a terminal answers by itself to queries in the output (cursor position, device
 * attributes, window size, OSC and DCS reports), as opposed to what a person types. */
const TERMINAL_REPLY =
  /^(?:\x1b\[[?>]?[\d;]*[Rcnt]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1bP[^\x1b]*\x1b\\)+$/;

export function newTerminalId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `term-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function isTerminalId(id: string): boolean {
  return /^term-[0-9a-f]{12}$/.test(id);
}

type ServerMessage =
  | { type: "started"; command_id: string; pid: number }
  | { type: "stdout" | "stderr"; data: string; offset: number }
  | { type: "exit"; exit_code: number }
  | { type: "error"; error_type?: string; error?: string };

export class TerminalView {
  readonly term: Terminal;
  private readonly fit = new FitAddon();
  private readonly encoder = new TextEncoder();
  private readonly observer: ResizeObserver;
  private ws: WebSocket | null = null;
  private offsets = { stdout: 0, stderr: 0 };
  private started = false;
  private finished = false;
  private disposed = false;
  private attempts = 0;
  private retryTimer: number | undefined;
  private fitFrame = 0;
  /** Re-attached output still being parsed: the queries in it were answered long ago. */
  private replayed = 0;
  private replaying = false;
  private replayTimer: number | undefined;

  constructor(
    private readonly host: HTMLElement,
    private readonly opts: TermOptions,
  ) {
    this.term = new Terminal({
      cursorBlink: true,
      convertEol: !opts.pty, // pipes carry bare \n; a PTY already sends \r\n
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace',
      fontSize: 14,
      scrollback: 10000,
      theme: { background: "#0f1419", foreground: "#e6e1cf", cursor: "#ffcc66" },
    });
    this.term.loadAddon(this.fit);
    this.term.open(host);
    // Tab belongs to the shell (completion); Shift+Tab leaves the terminal, so a keyboard is
    // never trapped in it: returning false skips xterm and lets the browser move the focus.
    this.term.attachCustomKeyEventHandler(
      (e) => !(e.key === "Tab" && e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey),
    );
    this.term.onData((data) => {
      if (this.replayed > 0 && TERMINAL_REPLY.test(data)) return;
      this.send({ type: "input", data });
    });
    this.term.onResize(({ rows, cols }) => {
      this.publishSize();
      this.send({ type: "resize", rows, cols });
    });
    this.fitNow();
    this.observer = new ResizeObserver(() => this.scheduleFit());
    this.observer.observe(host);
    this.connect();
  }

  focus(): void {
    this.term.focus();
  }

  /** Kill the command and everything it started (exit code 137). */
  kill(): void {
    this.send({ type: "kill" });
  }

  /** Try again after giving up (the Retry button). */
  retry(): void {
    if (this.disposed || this.finished) return;
    this.attempts = 0;
    this.connect();
  }

  /** Detach: the command keeps running on the server. */
  dispose(): void {
    this.disposed = true;
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.replayTimer);
    cancelAnimationFrame(this.fitFrame);
    this.observer.disconnect();
    this.ws?.close(1000);
    this.ws = null;
    this.term.dispose();
  }

  private scheduleFit(): void {
    cancelAnimationFrame(this.fitFrame);
    this.fitFrame = requestAnimationFrame(() => this.fitNow());
  }

  private fitNow(): void {
    if (this.disposed || !this.host.isConnected) return;
    if (this.fit.proposeDimensions()) this.fit.fit();
    this.publishSize();
  }

  private publishSize(): void {
    this.host.dataset.rows = String(this.term.rows);
    this.host.dataset.cols = String(this.term.cols);
  }

  private send(msg: object): void {
    if (this.ws?.readyState === WebSocket.OPEN && this.started) this.ws.send(JSON.stringify(msg));
  }

  private firstMessage(): object {
    if (this.opts.create && !this.started) {
      return {
        type: "execute",
        command: SHELL_COMMAND,
        command_id: this.opts.commandId,
        timeout_seconds: 0,
        shell: "/bin/bash",
        idle_timeout_seconds: IDLE_TIMEOUT_SECONDS,
        kill_on_disconnect: false,
        ttl_seconds: TTL_SECONDS,
        env: { TERM: "xterm-256color", COLORTERM: "truecolor" },
        pty: true,
        rows: this.term.rows,
        cols: this.term.cols,
      };
    }
    return {
      type: "reconnect",
      command_id: this.opts.commandId,
      stdout_offset: this.offsets.stdout,
      stderr_offset: this.offsets.stderr,
    };
  }

  private connect(): void {
    if (this.disposed) return;
    this.opts.onState(this.attempts ? "reconnecting" : "connecting", this.attempts ? "Reconnecting…" : "Connecting…");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/dp/${encodeURIComponent(this.opts.sandboxId)}/execute/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify(this.firstMessage()));
    };
    ws.onmessage = (event) => {
      if (ws === this.ws && typeof event.data === "string") this.receive(JSON.parse(event.data) as ServerMessage);
    };
    ws.onclose = () => {
      if (ws === this.ws) void this.closed(opened);
    };
  }

  private receive(msg: ServerMessage): void {
    switch (msg.type) {
      case "started":
        this.replaying = this.started || !this.opts.create;
        this.started = true;
        this.attempts = 0;
        this.opts.onState("connected", "Connected");
        // The PTY may have another size than this page (a reload, another browser).
        this.send({ type: "resize", rows: this.term.rows, cols: this.term.cols });
        break;
      case "stdout":
      case "stderr":
        this.attempts = 0;
        this.offsets[msg.type] = msg.offset + this.encoder.encode(msg.data).length;
        this.write(msg.type === "stderr" && !this.opts.pty ? `\x1b[31m${msg.data}\x1b[0m` : msg.data);
        break;
      case "exit":
        this.finished = true;
        this.term.write(`\r\n\x1b[2m[process exited with code ${msg.exit_code}]\x1b[0m\r\n`);
        this.opts.onState("exited", `Exited with code ${msg.exit_code}`);
        break;
      case "error":
        this.finished = true;
        if (msg.error_type === "CommandNotFound" || msg.error_type === "SessionExpired") {
          this.opts.onState(
            "ended",
            "This terminal is gone: its shell ended a while ago, or the server restarted. Open a new terminal.",
          );
        } else {
          this.opts.onState("failed", msg.error ?? "The command failed");
        }
        break;
    }
  }

  /** Output goes to xterm; during a re-attach's burst, counted until parsed (see onData). */
  private write(data: string): void {
    if (!this.replaying) {
      this.term.write(data);
      return;
    }
    this.replayed += 1;
    this.term.write(data, () => {
      this.replayed -= 1;
    });
    window.clearTimeout(this.replayTimer);
    this.replayTimer = window.setTimeout(() => {
      this.replaying = false;
    }, REPLAY_QUIET_MS);
  }

  private async closed(opened: boolean): Promise<void> {
    this.ws = null;
    if (this.disposed || this.finished) return;
    if (!opened) {
      const reason = await this.opts.diagnose();
      if (this.disposed) return;
      if (reason) {
        this.opts.onState("failed", reason);
        return;
      }
    }
    this.attempts += 1;
    if (this.attempts > MAX_ATTEMPTS) {
      this.opts.onState("failed", "Lost the connection to the server.");
      return;
    }
    this.opts.onState("reconnecting", "Connection lost; reconnecting…");
    const delay = Math.min(500 * 2 ** (this.attempts - 1), 8000);
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
  }
}
