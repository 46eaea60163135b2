"""The application: the `Kerrera` facade users start from, its sync face (`app.sync`)
and the operator's inspect methods. It wires the layers below (engine, notifier, peer,
queue, services, events) and holds the public methods; the work is done down there."""
