"""member-profile: 360-degree member profiles kept from every sale, in event time."""

SERVICE_NAME = "member-profile"
