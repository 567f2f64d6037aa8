"""How an importer says what a weight file lacks, in one message.

Every importer checks the whole file before it returns anything and then
names, per kind of problem, how many keys have it and the first few.
"""

from typing import Sequence

# Keys named per kind of problem; the rest are counted.
SHOWN = 5


def raise_problems(prefix: str, missing: Sequence[str],
                   unexpected: Sequence[str], wrong: Sequence[str],
                   wrong_label: str = "wrongly shaped") -> None:
  """Raises `ValueError(prefix + problems)` when any list is not empty.

  E.g. "x.pth is not ... for this model: 1 missing: 'a.weight'; 7
  unexpected: 'b', 'c', 'd', 'e', 'f' and 2 more".
  """
  problems = []
  for kind, keys in (("missing", missing), ("unexpected", unexpected),
                     (wrong_label, wrong)):
    if keys:
      more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
      problems.append(f"{len(keys)} {kind}: {', '.join(keys[:SHOWN])}{more}")
  if problems:
    raise ValueError(prefix + "; ".join(problems))
