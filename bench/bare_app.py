"""The intake baseline: a bare Flask route that reads the body and answers 204, served by the
same gunicorn settings as the bridge (`gunicorn -c gunicorn.conf.py bench.bare_app:app`)."""
from flask import Flask, request

app = Flask(__name__)


@app.post("/hooks/<name>")
def hook(name: str):
    request.get_data()
    return "", 204


@app.get("/healthz")
def healthz():
    return "ok"
