"""Every source, explicitly. Each module has NAME, MAX_BODY, load_config, verify and parse."""
from bridge.sources import alertmanager, generic, github, wechat

SOURCES = {
    generic.NAME: generic,
    github.NAME: github,
    alertmanager.NAME: alertmanager,
    wechat.NAME: wechat,
}

# Sources served at /hooks/<name>[/<route>] with the JSON answers of DESIGN.md;
# WeChat has its own endpoint (bridge/wechat_web.py), which answers as WeChat expects.
HOOKS = {name: SOURCES[name] for name in ("generic", "github", "alertmanager")}

# What the app factory hands to load_settings: each source reads its own variables.
LOADERS = {name: source.load_config for name, source in SOURCES.items()}
