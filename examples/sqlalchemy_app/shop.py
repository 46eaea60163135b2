"""A shop that saves an order with SQLAlchemy and queues its receipt in the same
transaction, then runs the `mail` queue until the receipt is sent.

The second order is refused after its job was inserted: its rollback takes the job with
it, so only one receipt is ever sent.

Run it (from the repository root; with no URL it uses an embedded PostgreSQL, and
KERRERA_PREFIX names the schema for every table, "public" by default):
    KERRERA_DATABASE_URL=postgresql://localhost/mydb python examples/sqlalchemy_app/shop.py
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from kerrera import Job, Kerrera, worker
from kerrera.contrib.sqlalchemy import insert


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    total: Mapped[int]


@worker(queue="mail", max_attempts=5)
def send_receipt(job: Job) -> None:
    print(f"receipt for order {job.args['order']} sent to {job.args['email']}")


def place_order(engine: Engine, app: Kerrera, email: str, total: int) -> int | None:
    """Save an order and queue its receipt; the job exists only if the order does."""
    with Session(engine) as session:
        order = Order(email=email, total=total)
        session.add(order)
        session.flush()  # assigns order.id, still uncommitted
        job = insert(session, send_receipt.new({"order": order.id, "email": email}), app=app)
        if total > 1000:  # a business rule fails after the job was queued
            session.rollback()
            print(f"order for {email} refused: job {job.id} rolled back with it")
            return None
        session.commit()
        return job.id


async def main() -> None:
    # The tables go to the KERRERA_PREFIX schema ("public"), the orders table too.
    schema = os.environ.get("KERRERA_PREFIX", "public")
    app = Kerrera(queues={"mail": 2}, prefix=schema, shutdown_grace_period=5)
    # The same database for SQLAlchemy, through psycopg 3 (the driver Kerrera writes with).
    url = make_url(app.dsn).set(drivername="postgresql+psycopg")
    engine = create_engine(url, execution_options={"schema_translate_map": {None: schema}})
    async with app:  # starting migrates: the schema exists from here on
        await asyncio.to_thread(Base.metadata.create_all, engine)
        # A sync view (Flask, a script) runs in a thread; the node goes on meanwhile.
        job_id = await asyncio.to_thread(place_order, engine, app, "ada@example.com", 120)
        await asyncio.to_thread(place_order, engine, app, "bob@example.com", 5000)
        assert job_id is not None
        while not (job := await app.get_job(job_id)) or not job.state.terminal:
            await asyncio.sleep(0.1)  # the table is the truth; the node runs it meanwhile
        print(f"job {job_id}: {job.state}")
    engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
