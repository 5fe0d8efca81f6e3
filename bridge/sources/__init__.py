"""Every source, explicitly. Each module has NAME, MAX_BODY, load_config, verify and parse."""
from bridge.sources import alertmanager, generic, github

SOURCES = {
    generic.NAME: generic,
    github.NAME: github,
    alertmanager.NAME: alertmanager,
}

# Sources served at /hooks/<name>[/<route>] with the JSON answers of DESIGN.md.
HOOKS = {name: SOURCES[name] for name in ("generic", "github", "alertmanager")}
