"""Cross-domain head reenactment (EDTN + an Animo/PIRenderer-style anime head generator) on animeceleb data."""
