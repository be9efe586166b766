"""Generated from proto/ by proto/generate.py (betterproto2); never edit by hand."""
