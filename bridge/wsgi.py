"""The gunicorn entry point (`bridge.wsgi:app`): the app, plus the sender when SEND_IN_WEB."""
from bridge import create_app

app = create_app()
services = app.extensions["bridge"]
if services.settings.send_in_web:
    services.start_sender()
