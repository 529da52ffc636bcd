// Client-side navigation: history entries, drawn by the router registered in main.ts.

let draw: () => void = () => {};

export function onNavigate(render: () => void): void {
  draw = render;
}

export function navigate(path: string, replaceEntry = false): void {
  if (replaceEntry) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  draw();
}
