"""The REST API, one module per domain: one view per operation, validate → service → serialize.

common     the exception handler, PNG responses and the schema parameters they share
images     images, their display copies and their mask versions
rounds     starting, following and cancelling rounds
review     blind review: items, their images and candidates, decisions and adjudication
exports    dataset exports
"""
