"""The gunicorn entry point (`bridge.wsgi:app`): the app, plus the sender when SEND_IN_WEB."""
import gc

from bridge import create_app

try:
    app = create_app()
except SystemExit as exc:
    # gunicorn's "worker failed to boot" code: the master stops instead of starting workers
    # that fail the same way (a bad setting or source definition) again and again.
    raise SystemExit(3) from exc
services = app.extensions["bridge"]
if services.settings.send_in_web:
    services.start_sender()
# What is loaded now lives as long as the process: out of the collector's way, so that a full
# collection (with a thousand connections open, each a greenlet) scans only what requests made.
gc.freeze()
