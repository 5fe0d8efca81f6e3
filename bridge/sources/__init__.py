"""Every source, explicitly. Each module has NAME, MAX_BODY, load_config, verify and parse."""
from bridge.sources import generic, wechat

SOURCES = {
    generic.NAME: generic,
    wechat.NAME: wechat,   # served at /wechat by bridge/wechat_web.py, not under /hooks
}

# Sources served at /hooks/<name>[/<route>] with the JSON answers of DESIGN.md.
HOOKS = {name: SOURCES[name] for name in ("generic",)}
