"""The embedded default bundle: offline tasks, a CLIP-like pre-trained tiny ViT, and its build command."""
