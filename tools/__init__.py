"""Developer tools kept outside the package: benchmarks of the app and the server they drive."""
