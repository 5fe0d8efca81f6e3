"""Every source. The hand-written ones are modules with NAME, MAX_BODY, load_config, verify and
parse; the ones defined as data (declarative.py, defs/*.yaml and SOURCES_DIR) are objects with
the same attributes, so the web layer serves both alike."""
from bridge.settings import EnvReader
from bridge.sources import alertmanager, declarative, generic, github, wechat

SOURCES = {
    generic.NAME: generic,
    github.NAME: github,
    alertmanager.NAME: alertmanager,
    wechat.NAME: wechat,
}

# Hand-written sources served at /hooks/<name>[/<route>] with the JSON answers of DESIGN.md;
# WeChat has its own endpoint (bridge/wechat_web.py), which answers as WeChat expects.
HOOKS = {name: SOURCES[name] for name in ("generic", "github", "alertmanager")}


def registry(env: EnvReader) -> dict:
    """Every source of this bridge: the hand-written ones, the built-in definitions and the
    user's own from SOURCES_DIR. A broken definition raises SettingsError (file and field)."""
    return {**SOURCES, **declarative.load_all(env.str("SOURCES_DIR"), reserved=tuple(SOURCES))}


def hooks(sources: dict) -> dict:
    """The sources served at /hooks/<name>: all but WeChat."""
    return {name: source for name, source in sources.items() if name != wechat.NAME}
