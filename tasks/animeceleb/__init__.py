"""AnimeCeleb-style data: procedural anime heads and anny human heads, rendered in Blender."""
