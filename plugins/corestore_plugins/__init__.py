"""First-party corestore plugins. Each is found through the ``corestore`` entry-point group,
exactly like a third-party plugin, and imported only when a profile enables it."""
