from django.db import models


class Item(models.Model):
    sku = models.CharField(max_length=40, unique=True)
    name = models.TextField()
    qty = models.IntegerField(default=0)

    class Meta:
        db_table = "compat_python_django"
