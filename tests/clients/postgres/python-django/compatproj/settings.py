"""A minimal Django project behind entra-db-proxy.

The seed's settings.py put an Entra access token in DATABASES["default"]["PASSWORD"] (and had to
refresh it). Behind the proxy there is no PASSWORD at all, and no sslmode: the proxy does TLS
and the token upstream.
"""
import os

SECRET_KEY = "compat-matrix-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["compat"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "NAME": os.environ.get("PGDATABASE", "orders"),
        "USER": "app-user",  # any name: the proxy logs in as its configured Entra user
        # no PASSWORD
    }
}
