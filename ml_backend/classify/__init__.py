"""Model -> every cell of a slide: the whole-slide result a lab wants at the end (``hali classify``)."""
