"""The ORM through entra-db-proxy: create, query, update, a duplicate caught by SQLSTATE."""
import os
import sys

import django
from django.core.management.base import BaseCommand
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from compat.models import Item

STACK = "python-django"


def fail(reason):
    print(f"FAIL {STACK} {reason}")
    sys.exit(1)


def sqlstate(exc):
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


class Command(BaseCommand):
    help = "Checks the ORM through the proxy and prints one result line."

    def handle(self, *args, **options):
        try:
            self.check_orm()
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001
            fail(f"{type(e).__name__}: {str(e).strip()}")

    def check_orm(self):
        Item.objects.all().delete()
        Item.objects.bulk_create([Item(sku=f"sku-{i}", name=f"item {i}", qty=i) for i in range(1, 6)])
        with transaction.atomic():
            Item.objects.filter(sku="sku-1").update(qty=10)

        try:
            with transaction.atomic():
                Item.objects.create(sku="sku-2", name="duplicate")
            fail("duplicate sku was accepted")
        except IntegrityError as e:
            if sqlstate(e) != "23505":
                fail(f"duplicate sku gave SQLSTATE {sqlstate(e)}, want 23505: {e}")

        total = Item.objects.filter(qty__gte=2).aggregate(s=Sum("qty"))["s"]
        if total != 10 + 2 + 3 + 4 + 5:
            fail(f"sum(qty) = {total}")
        names = list(Item.objects.filter(sku__in=["sku-3", "sku-4"]).order_by("sku").values_list("name", flat=True))
        if names != ["item 3", "item 4"]:
            fail(f"read back {names}")

        with connection.cursor() as cur:
            cur.execute("select current_user")
            (user,) = cur.fetchone()
        if user != os.environ["EXPECT_USER"]:
            fail(f"current_user is {user!r}, want {os.environ['EXPECT_USER']!r}")

        driver = connection.Database.__name__
        driver_v = connection.Database.__version__.split()[0]
        connection.close()
        print(
            f"ok {STACK} Django {django.get_version()} via {driver} {driver_v}; "
            f"migrate forwards and back, bulk_create, atomic(), IntegrityError 23505, aggregate"
        )
