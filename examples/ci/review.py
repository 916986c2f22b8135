"""Write the review page of the detector: its model against the stock Mask R-CNN it starts from.

    python review.py review.html

The page (diagram, findings with fixes, structural and cost diff, smoke test) is one
self-contained HTML file; CI uploads it as an artifact. Exits 1 when the review fails.
"""

from __future__ import annotations

import sys

import surgery

from detector import build_model, build_stock_model


def main(path: str = "review.html") -> int:
    title = "detector: WideMaskHead in Mask R-CNN"
    result = surgery.review(build_stock_model(), build_model(), path, title=title, image_size=128)
    print(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
