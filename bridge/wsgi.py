"""The gunicorn entry point (`bridge.wsgi:app`): the app, plus the sender when SEND_IN_WEB."""
import gc

from bridge import create_app

app = create_app()
services = app.extensions["bridge"]
if services.settings.send_in_web:
    services.start_sender()
# What is loaded now lives as long as the process: out of the collector's way, so that a full
# collection (with a thousand connections open, each a greenlet) scans only what requests made.
gc.freeze()
