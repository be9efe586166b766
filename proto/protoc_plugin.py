"""protoc plugin: betterproto2's generator, with google.protobuf.Timestamp kept as a message.

betterproto2 maps Timestamp fields to ``datetime``, which holds microseconds;
containerd round-trips nanoseconds (created_at/updated_at, exit times), so we
keep the wire message (``seconds``, ``nanos``) and convert in ``services/``.
"""

from betterproto2_compiler import known_types
from betterproto2_compiler.plugin.main import main

known_types.WRAPPED_TYPES.pop(("google.protobuf", "Timestamp"), None)

if __name__ == "__main__":
    main()
