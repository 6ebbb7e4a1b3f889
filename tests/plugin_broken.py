"""A plugin module that fails to import (for the PluginError test)."""
raise ImportError("plugin_broken needs a library that is not installed")
