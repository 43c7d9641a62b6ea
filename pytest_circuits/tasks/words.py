"""The paper's word pools, shared by the built-in tasks, their shifts and the zoo's vocabulary.

A pool lives here, below the task modules, because more than one of them draws from it: the
numbered lists' shifts insert IOI names and places, IOI's shifts fall back on list members, and
the zoo's toy language is built from all of them. Every word is a single GPT-2 token after a
space.
"""

from __future__ import annotations

__all__ = [
    "IOI_NAMES",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "NUMBER_WORDS",
    "NUMERAL_MEMBERS",
    "NUMERAL_VERBS",
]

#: Short, common, capitalised nouns used as list members in the numerals/numwords tasks.
NUMERAL_MEMBERS: tuple[str, ...] = (
    "Van", "Hat", "Ring", "Desk", "Sun", "Cup", "Box", "Car", "Pen", "Bag", "Key", "Map",
    "Bed", "Door", "Book", "Ball", "Bell", "Boat", "Bird", "Fish", "Tree", "Cat", "Dog",
    "Star", "Rock", "Road", "Ship", "Wall", "Gate", "Coin",
)
#: The verbs of the three list templates ("Van done in 1.", "Van lost in 1.", "Van born in 1.").
NUMERAL_VERBS: tuple[str, ...] = ("done", "lost", "born")
#: Number words for numwords; ``NUMBER_WORDS[k - 1]`` spells ``k`` (1..12).
NUMBER_WORDS: tuple[str, ...] = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
)

#: Common first names from the IOI literature, each a single GPT-2 token after a space.
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Paul", "Anna", "Mark", "Lisa", "David",
    "Kate", "Peter", "Emily", "Jack", "Laura", "Michael", "Rachel", "Ryan", "Amy", "Eric",
    "Alice", "Kevin", "Jane", "Adam", "Rose", "Sean", "Maria", "Scott", "Ruby", "Frank",
    "Grace", "George", "Helen", "Henry", "Jason", "Simon", "Victoria", "William", "Robert",
)
IOI_PLACES: tuple[str, ...] = ("store", "park", "school", "office", "garden", "house", "station")
IOI_OBJECTS: tuple[str, ...] = ("drink", "book", "ball", "gift", "snack", "ring")
