"""Purchase orders as UN/EDIFACT ORDERS D.96A, for suppliers on EDI (rendered with pydifact).

    UNB interchange (UNOC:3)
      UNH ORDERS:D:96A:UN
      BGM+220+<po_id>+9                       220 = order, 9 = original
      DTM+137:<raised CCYYMMDD>:102           document date
      DTM+2:<expected CCYYMMDD>:102           delivery requested by
      NAD+BY+<store_id>::92                   buyer (our store)
      NAD+SU+<supplier_id>::92                supplier
      LIN+<n>++<sku>:SA                       one per line, SA = supplier's article number
      QTY+21:<quantity>:PCE                   21 = ordered quantity
      PRI+AAA:<unit cost>                     net unit price, when known
      UNS+S
      CNT+2:<lines>
      UNT
    UNZ
"""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any

from pydifact.segmentcollection import Interchange, Message
from pydifact.segments import Segment

SENDER = "CRM-REPLENISHMENT"


def render_orders(order: dict[str, Any]) -> str:
    """`order` is a purchase order as the API shows it (`handlers.order_view`)."""
    raised: datetime = order["raised_at"]
    expected: datetime = order["expected_by"]
    reference = order["po_id"].rsplit("-", 1)[-1][:14]
    message = Message(reference, ["ORDERS", "D", "96A", "UN"])
    message.add_segment(Segment("BGM", "220", order["po_id"], "9"))
    message.add_segment(Segment("DTM", ["137", raised.strftime("%Y%m%d"), "102"]))
    message.add_segment(Segment("DTM", ["2", expected.strftime("%Y%m%d"), "102"]))
    message.add_segment(Segment("NAD", "BY", [order["store_id"], "", "92"]))
    message.add_segment(Segment("NAD", "SU", [order["supplier_id"], "", "92"]))
    for number, line in enumerate(order["lines"], start=1):
        message.add_segment(Segment("LIN", str(number), "", [line["sku"], "SA"]))
        message.add_segment(Segment("QTY", ["21", str(line["quantity"]), "PCE"]))
        if line.get("unit_cost") is not None:
            message.add_segment(Segment("PRI", ["AAA", str(line["unit_cost"])]))
    message.add_segment(Segment("UNS", "S"))
    message.add_segment(Segment("CNT", ["2", str(len(order["lines"]))]))
    interchange = Interchange(SENDER, order["supplier_id"], reference, ("UNOC", 3), timestamp=raised)
    interchange.add_message(message)
    with warnings.catch_warnings():  # pydifact ships no segment directory for the service segments
        warnings.simplefilter("ignore")
        return interchange.serialize()


def parse_order_lines(text: str) -> list[tuple[str, int]]:
    """(sku, quantity) per LIN of the ORDERS messages in an interchange: what a supplier's EDI reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interchange = Interchange.from_str(text)
    lines: list[tuple[str, int]] = []
    for message in interchange.get_messages():
        sku: str | None = None
        for segment in message.segments:
            if segment.tag == "LIN":
                sku = segment.elements[2][0]
            elif segment.tag == "QTY" and segment.elements[0][0] == "21" and sku is not None:
                lines.append((sku, int(segment.elements[0][1])))
                sku = None
    return lines
