"""ASGI entry point: plain Django for HTTP, Channels for websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")

# Set Django up before importing anything that touches models (auth middleware, consumers).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from searches.consumers import SameOriginValidator  # noqa: E402
from searches.routing import websocket_urlpatterns  # noqa: E402
from searches.uploads import BodyLimit, limit_daphne_bodies  # noqa: E402

# Under daphne: refuse oversized bodies while they arrive, before daphne buffers and queues them.
limit_daphne_bodies()

application = ProtocolTypeRouter(
    {
        # Bodies over the upload limit are refused while they stream in, before Django reads them.
        "http": BodyLimit(django_asgi_app),
        # The Origin check (scheme, host and port) stops other sites from opening a socket with
        # the user's cookie.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
