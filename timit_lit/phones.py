"""The 39 phone classes of HW2-1, by class id: ``PHONES[k]`` is the symbol of class ``k``.

TIMIT's 61 phones folded to 39 as in Lee & Hon (1989), in the order the course's labels
'0'..'38' use (0 = iy ... 38 = sil), as in the replica tool ``shared/tools/timit_replica.py``.
"""

PHONES: tuple[str, ...] = tuple(
    "iy ih eh ae ah uw uh aa ey ay oy aw ow l r y w er m n ng ch jh dh b d dx g p t k z v f th s sh hh sil".split()
)
