"""From the chosen model to a published bento."""
