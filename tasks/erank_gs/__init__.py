"""erank-GS: 3D Gaussian Splatting with effective-rank regularisation (METHODS.md §2)."""
