"""Static files of the browser demo that `koe serve` serves at /."""
