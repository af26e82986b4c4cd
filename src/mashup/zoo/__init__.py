"""mashup.zoo"""
