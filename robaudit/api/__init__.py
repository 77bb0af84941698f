"""The public API (robaudit as ra): filled below."""
