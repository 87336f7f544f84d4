// Where the index of an image is: file names beside it from the configured
// templates (`index-name`), tried in order. `{name}` is the image file name,
// `{stem}` the name without its last extension: KDE Linux publishes
// X_root-x86-64.caibx for X_root-x86-64.erofs (systemd #38605), casync and
// desync X.erofs.caibx. The same templates find a seed's index beside it.

export function stemOf(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot > 0 ? name.slice(0, dot) : name;
}

/** Index file names for `imageName`, in template order, without duplicates (never the image itself). */
export function indexFileNames(imageName: string, templates: readonly string[]): string[] {
  const stem = stemOf(imageName);
  const names = templates.map((t) => t.replace(/\{name\}/g, imageName).replace(/\{stem\}/g, stem));
  return [...new Set(names)].filter((n) => n !== imageName);
}
