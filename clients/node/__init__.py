"""A national node: subscriptions, local store, search (see docs and each module)."""
