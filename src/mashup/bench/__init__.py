"""mashup.bench"""
