// Calls to the hutch server with the session cookie; errors carry the server's envelope.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string | null,
    message: string,
  ) {
    super(message);
  }
}

export interface Resources {
  cpu: string | null;
  memory: string | null;
  storage?: string | null;
}

export interface Sandbox {
  id: string;
  name: string;
  template_name: string | null;
  image: string;
  status: string;
  status_message: string | null;
  dataplane_url: string;
  created_at: string;
  updated_at: string;
  ttl_seconds: number | null;
  idle_ttl_seconds: number | null;
  expires_at: string | null;
  resources?: Resources;
  running_commands?: number;
  snapshot_id?: string | null;
}

export interface Snapshot {
  id: string;
  name: string;
  status: string;
  status_message: string | null;
  docker_image: string | null;
  fs_capacity_bytes: number | null;
  fs_used_bytes: number | null;
  source_sandbox_id: string | null;
  created_at: string;
  tags: string[];
}

export interface ServiceUrl {
  service_url: string;
  browser_url: string;
}

export interface Template {
  id: string;
  name: string;
  image: string;
  resources: Resources;
  created_at: string;
}

export interface Command {
  command_id: string;
  pid: number;
  state: "running" | "exited" | "expired";
  pty: boolean;
  exit_code: number | null;
  created_at: string;
  attached: number;
  output_bytes: number;
}

/** The control-plane API as the newer SDKs call it. */
export const CONTROL = "/api/v2/sandboxes";

let onSignedOut: () => void = () => {};

/** Called when the server answers 401 to a signed-in call: the session expired or ended. */
export function whenSignedOut(handler: () => void): void {
  onSignedOut = handler;
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "Network", "The hutch server cannot be reached; is it running?");
  }
  let data: unknown = null;
  if (res.status !== 204) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const detail = (data as { detail?: { error?: unknown; message?: unknown } } | null)?.detail;
    const error = new ApiError(
      res.status,
      typeof detail?.error === "string" ? detail.error : null,
      typeof detail?.message === "string" ? detail.message : `HTTP ${res.status} ${res.statusText}`,
    );
    const signingIn = method === "POST" && path === "/ui/api/session";
    if (res.status === 401 && !signingIn) onSignedOut();
    throw error;
  }
  return data as T;
}

export function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
