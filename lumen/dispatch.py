"""Fair claiming across users: round robin with an equal share of free capacity per user."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RoundRobin:
    """Splits free capacity across active users, rotating past those just served.

    Every active user gets at least one slot per round while capacity lasts, so a user with
    50,000 queued items delays a user with 5 by at most one round of in-flight work.
    """

    offset: int = 0

    def plan(self, users: list[str], capacity: int, max_per_user: int) -> list[tuple[str, int]]:
        if not users or capacity <= 0:
            return []
        start = self.offset % len(users)
        ordered = users[start:] + users[:start]
        share = max(1, min(max_per_user, capacity // len(ordered)))
        plan: list[tuple[str, int]] = []
        for user in ordered:
            if capacity <= 0:
                break
            take = min(share, capacity)
            plan.append((user, take))
            capacity -= take
        # the next round starts with the first user this round could not serve
        self.offset = (start + len(plan)) % len(users)
        return plan
