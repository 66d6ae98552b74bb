"""Django settings for nasweb.

Every value that differs between a laptop and a server comes from the environment; the defaults
give a working single-machine install (SQLite under var/, no Redis needed to start).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --------------------------------------------------------------------------------------------
# Core
# --------------------------------------------------------------------------------------------

# The dev server is the default way to run nasweb on one's own machine, so DEBUG defaults on.
DEBUG = _env_bool("DEBUG", True)

_DEV_SECRET_KEY = "nasweb-insecure-dev-key-change-me-0f3a9c1e7b5d"
SECRET_KEY = os.environ.get("SECRET_KEY", "") or _DEV_SECRET_KEY
if SECRET_KEY == _DEV_SECRET_KEY and not DEBUG:
    warnings.warn(
        "SECRET_KEY is not set: nasweb is using its built-in development key with DEBUG off. "
        "Set SECRET_KEY to a long random value before exposing nasweb on a network.",
        RuntimeWarning,
        stacklevel=1,
    )

ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Origins (scheme://host[:port]) allowed to POST forms and open websockets besides the site's own
# (the one the browser's Host header names): e.g. the public origin when a proxy rewrites Host.
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", [])

# --------------------------------------------------------------------------------------------
# HTTPS, usually behind a reverse proxy that terminates TLS (README, "Deploying")
# --------------------------------------------------------------------------------------------

# One switch for a site served over HTTPS; every part of it has its own override.
NASWEB_HTTPS = _env_bool("NASWEB_HTTPS", False)
SECURE_SSL_REDIRECT = _env_bool("NASWEB_SSL_REDIRECT", NASWEB_HTTPS)
SESSION_COOKIE_SECURE = _env_bool("NASWEB_SECURE_COOKIES", NASWEB_HTTPS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# A year, as the HSTS preload list asks; 0 sends no Strict-Transport-Security header.
SECURE_HSTS_SECONDS = _env_int("NASWEB_HSTS_SECONDS", 365 * 24 * 3600 if NASWEB_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("NASWEB_HSTS_INCLUDE_SUBDOMAINS", NASWEB_HTTPS)
SECURE_HSTS_PRELOAD = _env_bool("NASWEB_HSTS_PRELOAD", NASWEB_HTTPS)
# The proxy tells the scheme the browser used in X-Forwarded-Proto.  Trust that header only
# behind a proxy that always sets it: a client talking to daphne directly could forge it.
if _env_bool("NASWEB_TRUST_X_FORWARDED_PROTO", NASWEB_HTTPS):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    # daphne first: it replaces runserver with an ASGI server so websockets work in development.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and Redoc assets for /api/docs/ and /api/redoc/, served locally (no CDN).
    "drf_spectacular_sidecar",
    "searches.apps.SearchesConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # 503, not 500, when the database is down (the broker being down is not an error at all).
    "searches.middleware.ServiceUnavailableMiddleware",
]

ROOT_URLCONF = "nasweb.urls"
WSGI_APPLICATION = "nasweb.wsgi.application"
ASGI_APPLICATION = "nasweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --------------------------------------------------------------------------------------------
# Files: everything nasweb writes lives under one data directory (var/ by default)
# --------------------------------------------------------------------------------------------

NASWEB_DATA_DIR = Path(os.environ.get("NASWEB_DATA_DIR", "") or BASE_DIR / "var").resolve()
# SQLite cannot create the folder its database lives in.
NASWEB_DATA_DIR.mkdir(parents=True, exist_ok=True)

MEDIA_ROOT = NASWEB_DATA_DIR / "media"
MEDIA_URL = "/media/"

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # js/plotly.min.js, straight from the installed plotly package (no CDN, no vendored copy).
    "searches.staticfiles.PlotlyFinder",
]
STATIC_ROOT = NASWEB_DATA_DIR / "static"
# whitenoise warns on every request when the folder is missing (before the first collectstatic).
STATIC_ROOT.mkdir(exist_ok=True)

# Where artifacts live (trained weights, int8 models, uploaded data sets): every read and write
# goes through Django's storage API (searches.services.files), so a worker on another machine
# sees what the web server stored and the reverse.  Local disk under MEDIA_ROOT by default;
# S3-compatible object storage when NASWEB_S3_BUCKET is set (README: "Workers on more machines").
NASWEB_S3_BUCKET = os.environ.get("NASWEB_S3_BUCKET", "").strip()
if NASWEB_S3_BUCKET:
    _DEFAULT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": NASWEB_S3_BUCKET,
            # Unset: AWS itself; set for MinIO, Ceph, Garage, moto ... (http://host:port).
            "endpoint_url": os.environ.get("NASWEB_S3_ENDPOINT_URL", "").strip() or None,
            "region_name": os.environ.get("NASWEB_S3_REGION", "").strip() or None,
            # Unset: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, instance roles).
            "access_key": os.environ.get("NASWEB_S3_ACCESS_KEY_ID", "").strip() or None,
            "secret_key": os.environ.get("NASWEB_S3_SECRET_ACCESS_KEY", "").strip() or None,
            # A key prefix, so one bucket can hold several installations.
            "location": os.environ.get("NASWEB_S3_PREFIX", "").strip().strip("/"),
            # Names are chosen by nasweb (one per candidate); a re-trained candidate replaces its file.
            "file_overwrite": True,
            "default_acl": None,
            "addressing_style": os.environ.get("NASWEB_S3_ADDRESSING_STYLE", "").strip() or None,
        },
    }
else:
    _DEFAULT_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}

# Uploaded data sets are copied from the storage once per machine, into this folder, under their
# content hash (a worker reads an upload from the store once, however many runs use it).
NASWEB_CACHE_DIR = Path(os.environ.get("NASWEB_CACHE_DIR", "") or NASWEB_DATA_DIR / "cache").resolve()

# Dataset uploads: the request is refused while it streams in once it passes this size, and the
# upload is decoded only in a child process bounded in memory and time (searches.services.datasets).
NASWEB_UPLOAD_MAX_MB = _env_int("NASWEB_UPLOAD_MAX_MB", 200)
NASWEB_UPLOAD_MAX_DECODED_MB = _env_int("NASWEB_UPLOAD_MAX_DECODED_MB", 512)
NASWEB_UPLOAD_MEMORY_MB = _env_int("NASWEB_UPLOAD_MEMORY_MB", 3072)
NASWEB_UPLOAD_TIMEOUT_S = _env_int("NASWEB_UPLOAD_TIMEOUT_S", 120)
FILE_UPLOAD_HANDLERS = [
    "searches.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

STORAGES = {
    "default": _DEFAULT_STORAGE,
    # Hashed, compressed files need `collectstatic` first: only ask for them when DEBUG is off.
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        ),
    },
}

# Datasets: Debian's dataset-fashion-mnist installs the IDX files here.
NASWEB_FASHION_MNIST_DIR = Path(
    os.environ.get("NASWEB_FASHION_MNIST_DIR", "") or "/usr/share/datasets/fashion-mnist"
)

# --------------------------------------------------------------------------------------------
# Database: SQLite under the data directory, or whatever DATABASE_URL names (PostgreSQL)
# --------------------------------------------------------------------------------------------

_DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
if _DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(_DATABASE_URL, conn_max_age=600, conn_health_checks=True),
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": NASWEB_DATA_DIR / "db.sqlite3",
            "OPTIONS": {
                # The web process and Celery workers write concurrently: wait for the lock
                # instead of failing, and take the write lock up front (no upgrade deadlocks).
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        },
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --------------------------------------------------------------------------------------------
# Authentication (Django's default user model)
# --------------------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --------------------------------------------------------------------------------------------
# Internationalisation
# --------------------------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --------------------------------------------------------------------------------------------
# Redis, Celery, Channels
# --------------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "").strip()

CELERY_BROKER_URL = REDIS_URL or "redis://127.0.0.1:6379/0"
# JSON only on the broker: tasks take ids, never objects, and nothing is ever unpickled.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Task state is mirrored in our own rows (SearchRun.status, Candidate.status), so no result backend.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# A task is acknowledged only when it finishes, and a worker holds one task at a time, so a worker
# that dies mid-training hands its task back instead of losing it or hoarding queued ones.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = _env_int("NASWEB_TASK_TIME_LIMIT", 6 * 3600)
CELERY_TASK_SOFT_TIME_LIMIT = max(CELERY_TASK_TIME_LIMIT - 60, 1)
# Redis re-delivers an unacknowledged task after visibility_timeout: it must outlast the longest
# task, or a long (acks_late) task would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# Liveness (searches/services/leases.py): a worker renews the lease of the work it holds every
# third of NASWEB_LEASE_SECONDS; every worker's reaper, each NASWEB_REAP_SECONDS, queues again
# the work whose lease ran out (failed after NASWEB_MAX_ATTEMPTS lost attempts) and sends the
# queued work whose task could not be sent, or was sent NASWEB_RESEND_SECONDS ago and never
# taken while the broker's queue is empty (a broker that restarted without its data).
# Defaults: lost work back in the queue within 40 s, lost messages sent again within 70 s.
NASWEB_LEASE_SECONDS = _env_int("NASWEB_LEASE_SECONDS", 30)
NASWEB_REAP_SECONDS = _env_int("NASWEB_REAP_SECONDS", 10)
NASWEB_RESEND_SECONDS = _env_int("NASWEB_RESEND_SECONDS", 60)
NASWEB_MAX_ATTEMPTS = _env_int("NASWEB_MAX_ATTEMPTS", 3)
# Evaluations a run keeps queued or training at once (a run's config may set its own "parallel").
NASWEB_PARALLEL_EVALUATIONS = _env_int("NASWEB_PARALLEL_EVALUATIONS", 2)

# channels_redis waits for a consumer's next message with a blocking read (BZPOPMIN) of 5 s;
# redis-py 8 gives every connection a 5 s socket timeout by default, so on an idle run the read
# raced the timeout, the consumer died with "Timeout reading from ..." and daphne closed every
# open dashboard with 1011.  The socket timeout must outlast the blocking read by a wide margin;
# keepalive still notices a Redis that vanished without closing the connection.
CHANNEL_REDIS_SOCKET_TIMEOUT = 30.0

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": CHANNEL_REDIS_SOCKET_TIMEOUT,
                        "socket_connect_timeout": 5.0,
                        "socket_keepalive": True,
                    }
                ]
            },
        },
    }
else:
    # Without Redis, events reach only consumers in the same process (dev server, tests).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --------------------------------------------------------------------------------------------
# REST API
# --------------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    # Token first: an anonymous API client gets 401 with a WWW-Authenticate header, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "nasweb API",
    "DESCRIPTION": "Neural architecture search for microcontrollers.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema, like everything else, is for signed-in users only.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "searches.models.SearchRun.Status",
        "CandidateStatusEnum": "searches.models.Candidate.Status",
        # Pruning and deployment-training jobs share one set of states.
        "JobStatusEnum": "searches.models.PruningJob.Status",
    },
}

# --------------------------------------------------------------------------------------------
# Logging: to stderr, INFO for nasweb's own code
# --------------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain"}
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "searches": {"level": os.environ.get("NASWEB_LOG_LEVEL", "INFO")},
        "nasweb": {"level": os.environ.get("NASWEB_LOG_LEVEL", "INFO")},
        # Replaces Django's own DEBUG-only console handler, so that nothing is printed twice.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
