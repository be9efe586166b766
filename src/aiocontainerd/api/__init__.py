"""Generated from proto/ by tools/gen_proto.py (betterproto2); never edit by hand."""
