"""Placeholder (being written): AUTO."""
def auto_ntk_fn(**kwargs):
  raise NotImplementedError("AUTO is not available yet.")
