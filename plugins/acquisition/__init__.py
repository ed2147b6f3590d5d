"""The acquisition side: hooks in the microscope's process and the sender that never loses a frame.

Everything here runs next to Micro-Manager; it imports the wire (``lowdose.wire``)
and never the daemon.
"""
