"""Model -> queue order: Coreset, uncertainty and relevance strategies (a name-to-function registry), tile ranking."""
