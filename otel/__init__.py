"""routegate.otel: OpenTelemetry tracing and metrics for the gateway.

Nothing here configures anything at import: :class:`TelemetryExtension` does it when the
gateway starts (``default_extensions`` adds it for ``[telemetry]``).
"""

from routegate.otel.extension import TelemetryExtension
from routegate.otel.observer import TelemetryObserver
from routegate.otel.setup import Telemetry, setup_telemetry
from routegate.otel.version import __version__

__all__ = ["Telemetry", "TelemetryExtension", "TelemetryObserver", "__version__", "setup_telemetry"]
