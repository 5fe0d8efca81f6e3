"""gunicorn entry point `bench.ablated_wsgi:app`: the Procfile's bridge.wsgi:app with the stages
named in BENCH_TAKE_OUT (comma-separated, bench/ablation.py) answered from a cache."""
import os

from bench.ablation import take_out
from bridge.wsgi import app, services

take_out(services, [stage for stage in os.environ.get("BENCH_TAKE_OUT", "").split(",") if stage])
